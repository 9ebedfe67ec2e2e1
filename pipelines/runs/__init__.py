"""The end-to-end runs: extraction into a store (`extraction`: its rows planned in `planning`, the stores filled
in `filling`, with its augmented `views`), the heads (`training`: train; `prediction`: evaluate, predict), store
inspection and compaction (`inspection`) and the offline `demo`."""

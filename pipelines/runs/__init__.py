"""The end-to-end runs: extraction into a store (`extraction`, with its augmented `views`), the heads
(`heads`: train, evaluate, predict), store inspection and compaction (`inspection`) and the offline `demo`."""

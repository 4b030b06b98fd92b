"""The trainer `accelerate launch -m runner.train CONFIG.json` runs; imports nothing else from runner."""

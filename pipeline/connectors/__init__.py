"""Sources that put raw records on the raw topics: replay of real history, the DeFiLlama poller."""

"""llamastream core: settings, topics, records and pure stream logic shared by agents and the sidecar."""

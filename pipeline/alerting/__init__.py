"""Alert rules, their evaluation and their notifications; pure logic shared by agents and the sidecar."""

"""Table declarations only; each name is its changelog topic, so renaming one is a migration."""

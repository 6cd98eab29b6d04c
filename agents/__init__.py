"""Faust agents, one per module, named verb_noun; each loops, calls pipeline/ functions, writes tables."""

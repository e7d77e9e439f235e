"""Tools around the engine: the command line, the demo and the web dashboard."""

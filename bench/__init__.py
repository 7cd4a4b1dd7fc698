"""The side-by-side benchmark of jobqueue's stages and their peers: ``python -m bench``."""

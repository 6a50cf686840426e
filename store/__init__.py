"""What lies on disk: run directories (runs.py), image data sets (images.py) and index maps (index_maps.py).

The bottom layer: it imports no library of the project and no command, and nothing else writes these files.
"""

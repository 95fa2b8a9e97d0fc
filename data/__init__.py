"""The data floor: data/prepare.py writes each dataset into $ESO_DATA_DIR/NAME (default data/NAME)
by its recipe, data/NAME/prepare.py, on data/writing.py; data/common.py reads it back for the
scripts."""

"""The data floor: data/prepare.py writes datasets to $ESO_DATA_DIR/NAME (default: data/NAME) and
reads them back."""

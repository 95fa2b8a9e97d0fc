"""The data floor: data/prepare.py writes datasets under data/NAME and reads them back."""

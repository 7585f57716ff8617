"""fastmim: fast masked image modeling pretraining from a frozen teacher."""

__version__ = "0.1.0"

"""esreid: ES-Net and erasing methods for person and vehicle re-identification."""

__version__ = "0.1.0"

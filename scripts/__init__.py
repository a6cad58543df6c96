"""Command-line programs of SC-CLIP for Hugging Face; `segment` is installed as `scclip-segment`."""

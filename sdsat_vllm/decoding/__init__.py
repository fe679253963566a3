"""The exact SDSAT decoding engine on transformers (the algorithm's reference implementation)."""

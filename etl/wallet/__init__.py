"""Wallet passes for ESC cards: Apple Wallet (.pkpass); Google Wallet to follow (issue 24)."""

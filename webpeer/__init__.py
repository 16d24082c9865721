"""peerlink webpeer: one user's peer process (docs/ARCHITECTURE.md shows its layers)."""

"""reporter."""

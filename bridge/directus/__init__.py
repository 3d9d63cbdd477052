"""All that the bridge writes into Directus (docs/directus.md)."""

"""The snapshot service: KV caches saved in the context-snapshot layout, obfuscated, encrypted, on file:// or s3://."""

"""The local stack for tests, `make dev` and benchmarks: a real Directus, an SMTP sink, a
throwaway PostgreSQL. Not part of the installed package."""

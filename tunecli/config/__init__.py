"""The recipe config: schema, overrides, key paths and the rules both `tune new` and the trainer apply."""

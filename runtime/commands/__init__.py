"""What the CLI's subcommands do, above the facade (biozoo.runtime.model): validate, info, bench and predict over
files (with image reading/writing, box files and progress)."""

"""One module per subcommand; see runbook/cli.py."""

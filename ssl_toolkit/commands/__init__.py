"""One module per `ssl` subcommand; each registers itself on `ssl_toolkit.cli.main`."""

"""Third-party pool backends made fork-safe, each in the README's three-line base.py."""

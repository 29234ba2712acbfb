"""The wizard's screens, one module a screen."""

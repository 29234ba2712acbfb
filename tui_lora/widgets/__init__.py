"""Reusable widgets of the wizard: path entry and picker, form rows, check rows, confirmation."""

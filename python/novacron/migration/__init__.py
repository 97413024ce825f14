"""Live migration: QEMU's stream carried between daemons through the page engine."""

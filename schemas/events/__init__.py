"""One frozen class per event type and version; the type strings are spelled only here."""

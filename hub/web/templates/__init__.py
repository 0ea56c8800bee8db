"""HTML templates (string.Template, values escaped by hub.web.views); a package so wheels carry them."""

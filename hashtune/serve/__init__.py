"""Serving a bundle: request checks (`inputs`), the bundle in service (`service`), where it comes from
(`source`), the Ray Serve application and its page (`app`, `page.html`), and `python -m hashtune.serve` (`cli`).
"""

"""Starting things: the ``scorestream`` command, local broker scripts, container files."""

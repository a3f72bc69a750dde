"""Scripts that record and rewrite test captures; never imported by otus/."""

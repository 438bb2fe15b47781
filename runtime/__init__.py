"""bodyrt.runtime: the lean runtime. It never imports torch."""

"""Runnable ETL pipelines: ``flowbus worker -A examples.pipelines.clickstream:app``."""

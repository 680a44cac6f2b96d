"""Pipeline stages. Each module holds one stage class (see curate.stages.base.Stage)."""

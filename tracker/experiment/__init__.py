"""The experiment: the data model, the parser of experiment files, settings, schedulers, the product of seeds/zip/exclusions and the plan. Pure: no torch."""

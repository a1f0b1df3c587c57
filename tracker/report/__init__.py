"""The HTML report (a package, one job per module): seed-fixed comparison grids, run details and an efficiency view,
as a static folder.

Two steps, as in coverage.py's html.py: first the report is built as plain frozen dataclasses
(``Report`` -> ``Grid`` -> ``Row`` -> ``Cell``, ``RunDetail``, ``EfficiencyRow``, ``VerifyView``) from the run
store,
then Jinja2 renders them with autoescaping on, so no user text (prompts, labels, names, errors) is
ever inserted as HTML. The run details travel to the page as JSON inside
``<script type="application/json">`` and the page's script only ever sets ``textContent``.

Which runs: the experiment file as last run (its source text is in the store) is parsed and
expanded again, so runs that are planned but not generated show as "not run yet" placeholders and
runs left over from an older version of the file are left out (and counted). When the source cannot
be expanded any more, the stored runs are shown as they are.

Images are copied into the report folder under their sha256 and thumbnails are made once per
sha256, so a second build only works on runs whose image changed; files no longer referenced are
removed. The folder opens from disk with no server and no network.

Modules, in the order a build uses them: ``source`` (runs and axes from the store), ``layout`` (rows,
columns, one section per grid), ``highlight`` (prompt spans), ``assets`` (images and thumbnails),
``efficiency`` (per-configuration speed and memory), ``grids`` (labelled PNG grids, ``tracker grid``),
``data`` (the page's dataclasses), ``attach`` (MLflow links and attachments) and ``html`` (build and render).
"""

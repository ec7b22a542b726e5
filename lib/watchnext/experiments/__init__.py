"""A/A and A/B experiments on the recommendation recipe: the config models (``spec``), the stable
hash assignment of users to variants and the append-only assignments table (``assignment``), and the
offline statistics with the decision rule (``analysis``). docs/experiments.md says why."""

"""The ADORE operator: reconciles AdoreRound resources into one Job per stage.

Run it with `adore-operator` (kopf, all namespaces) or
`adore-operator --namespace NS`. See handlers.py for what reacts to what.
"""

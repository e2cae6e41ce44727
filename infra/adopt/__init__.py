"""``siphon-infra import``: bring the trunks and dispatch rules of an existing LiveKit project under a stack file.

``live`` lists the project, ``keys`` turns LiveKit names into stack keys, ``dispatch`` reads a rule's agent
metadata back into a route's layer, ``build`` writes the stack file's document, ``changes`` compiles it with the
plan and lists what the first ``pulumi up`` would rewrite, ``yamlout`` renders it in the committed stacks' style.
"""

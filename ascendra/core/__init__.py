"""The Ascendra policy core: every scheduling decision, as pure code with an injected clock.

Nothing here does I/O, reads a clock or keeps global state; the simulator, the router and the
runtime all call into it, so a result in the simulator is a result about the serving code.
"""

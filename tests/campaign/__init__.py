"""A Jepsen-style fault campaign on real broker processes (issue 15): client threads
record every operation, a nemesis injects faults, checkers judge the history."""

"""Running services as processes: the supervisor, its children, states, policy, logs and control."""

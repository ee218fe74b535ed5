"""pacsguard's built-in plugins, one subpackage each, registered like third-party ones."""

"""Not matched by the tests' race_instrument prefix: must load as usual."""


def value(obj):
    return obj.balance

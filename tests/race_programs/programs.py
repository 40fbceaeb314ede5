"""Unannotated concurrent code, racy and race-free: imported with race_instrument set.

Nothing here calls labotel: every access is found by the import-time rewrite. Each
function is what one thread runs; the tests start the threads.
"""


hits = 0
stopped = False


class Account:
    def __init__(self):
        self.balance = 0
        self.conn = None
        self.stop = False
        self.connects = 0
        self.cursor = None

    def deposit(self, amount):
        self.balance += amount

    def deposit_locked(self, lock, amount):
        with lock:
            self.balance += amount

    def connection(self):
        if self.conn is None:
            self.conn = object()
        return self.conn

    def close(self):
        self.conn = None

    def set_balance(self, value):
        self.balance = value

    def read_balance(self):
        return self.balance

    def ignored_deposit(self, amount):
        self.balance += amount  # labotel: ignore-race

    def open_once(self, make):
        if self.conn is None:
            with make() as self.conn:  # the `with` target stores self.conn
                pass

    def scan_once(self, items):
        if self.cursor is None:
            for self.cursor in items:  # the `for` target stores self.cursor
                pass

    def reset_cursor(self):
        self.cursor = None


class Slotted:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1


class Private:
    def __init__(self):
        self.__count = 0

    def bump(self):
        self.__count += 1

    def count(self):
        return self.__count


def count_global():
    global hits
    hits += 1


def read_global():
    return hits


def count_global_locked(lock):
    global hits
    with lock:
        hits += 1


def set_stop():
    global stopped
    stopped = True


def poll_stop(limit):
    for _ in range(limit):
        if stopped:
            return True
    return stopped


def put_if_absent(d, key, value):
    if key not in d:
        d[key] = value
    return d[key]


def increment_item(d, key):
    d[key] = d.get(key, 0) + 1


def augment_item(d, key):
    d[key] += 1


def append_unique(seen, x):
    if x not in seen:
        seen.append(x)


def add_unique(seen, x):
    if x not in seen:
        seen.add(x)


def append_result(results, x):
    results.append(x)


def setdefault_item(d, key):
    return d.setdefault(key, []).append(1)


def store_item(d, key, value):
    d[key] = value


def bounded_append(items, x, limit):
    if len(items) < limit:
        items.append(x)


def iterate_then_clear(items):
    total = 0
    for item in items:
        total += item
    items.clear()
    return total


def bump_local(local):
    local.n = getattr(local, "n", 0) + 1
    local.n += 1


def fail_lookup(d):
    return d["missing"]


def fail_attribute(obj):
    return obj.missing


def add_item(s, x):
    s.add(x)


def drop(d, key):
    del d[key]


def drop_if_present(d, key):
    if key in d:
        del d[key]


def drop_attribute(obj):
    del obj.conn


def bump_module_counter(module):
    module.hits += 1


def keep_first(items, n):
    items[:] = items[:n]  # a slice read, then a slice write: the whole list


def drop_first(items):
    del items[:1]  # a slice delete: a write of the whole list


def copy_items(items):
    return items[1:]

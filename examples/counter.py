"""
A paced loop and two actions that return values.

    servicefactory run examples/counter.py --daemon
    servicefactory perform Counter count
    servicefactory perform Counter add 5
    servicefactory stop Counter
"""
import threading

from servicefactory import Service


@Service.API.endpoint(port=0)
class Counter(Service.base):

  def __init__(self):
    self.ticks = 0
    self.total = 0
    self.lock = threading.Lock()  # handlers run on the API's threads, beside loop()

  def loop(self):
    self.ticks += 1
    if self.ticks % 10 == 0:
      self.log("%d ticks, total %d", self.ticks, self.total)
    self.sleep(1)  # returns at once when the service is asked to stop

  @Service.API.handle("count")
  def count(self, data):
    """The loop's ticks and the running total."""
    return {"ticks": self.ticks, "total": self.total}

  @Service.API.handle("add")
  def add(self, data):
    """Add a number to the total; answer the new total."""
    if not isinstance(data, (int, float)) or isinstance(data, bool):
      raise TypeError("send a number, e.g. 5")
    with self.lock:
      self.total += data
      return self.total


if __name__ == "__main__":
  Counter().run()

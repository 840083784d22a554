# frozen_string_literal: true

module MegaMutex
  # Connections for one configuration, shared by the threads of one process.
  #
  # A libmemcached handle serves one thread at a time, so each operation
  # checks a client out and back in ({with}); a lock taken with a block keeps
  # the client it took on until its release ({checkout}, {checkin}), so the
  # release is one round trip. At most {MAX_IDLE} idle clients are
  # kept; one given back beyond that is closed at once (its socket and
  # eventfd), not left for the GC. After fork the child drops the parent's
  # clients without closing them (closing would shut down sockets the parent
  # still uses) and opens its own; a parent's client given back in the
  # child is neither kept nor closed.
  #
  # A client that cannot be made because the process is out of file
  # descriptors or memory raises {ConnectionError} naming the cause.
  #
  # With a session store (`config.backend = :mysql`) a client is one
  # MariaDB session: a thread that takes a lock checks one out through
  # {Session} and keeps it until its last lock on it is released, so a
  # client given back here never holds a lock; one whose request failed is
  # closed instead of given back.
  #
  # With `config.backend = :memory` its clients are clients of this
  # process's memory store ({MemoryStore}, autoloaded on first use:
  # Native::Client.memory), checked out and in like connections, and no
  # connection is opened.
  # @api private
  class Pool
    # Idle clients kept per process.
    MAX_IDLE = 64
    # Servers remembered by {server_for}; beyond this the cache starts again.
    SERVERS_MAX = 1024

    # @param config [Configuration] a frozen configuration
    def initialize(config)
      @config = config
      @mutex = Mutex.new
      @idle = []
      @pid = MegaMutex.pid
      @servers = {}
      @closed = false
    end

    # Yields a client for the duration of the block.
    # @yieldparam client [Native::Client]
    # @return the block's value
    def with
      client = checkout
      begin
        yield client
      ensure
        checkin(client)
      end
    end

    # A client for the caller alone until it gives it back with {checkin}.
    # @return [Native::Client]
    # @raise [ConnectionError] when no client can be made
    def checkout
      client = @mutex.synchronize do
        forget_parent_clients
        @idle.pop
      end
      client || open_client
    end

    # Gives back a client from {checkout}: kept for the next caller, or
    # closed when MAX_IDLE are idle already. A client of another process (the
    # parent of a forked child) is neither kept nor closed.
    # @param client [Native::Client]
    # @return [void]
    def checkin(client)
      mine = client.instance_variable_get(:@mega_mutex_pid) == MegaMutex.pid
      kept = @mutex.synchronize do
        # After a fork @pid may still be the parent's: the idle list is then
        # the parent's too, and forgotten at the next checkout.
        mine && !@closed && @pid == MegaMutex.pid && @idle.size < MAX_IDLE && !client.closed? && @idle.push(client)
      end
      # Closed outside the mutex: close says "quit" to the server. A parent's
      # client is left alone (its handle frees itself without I/O).
      client.close if !kept && mine && !client.closed?
      nil
    end

    # The server that keeps `key` ([host, port]; port 0: a unix socket),
    # computed by `client` once per key and remembered: the servers of a
    # pool never change.
    # @param client [Native::Client] a client of this pool, checked out
    # @param key [String] a memcached key
    # @return [Array(String, Integer)] frozen
    def server_for(client, key)
      server = @servers[key]
      return server if server

      server = client._server_for(key).freeze
      @servers.clear if @servers.size >= SERVERS_MAX
      @servers[key] = server
    end

    # Closes the idle connections (those of this process only), and each
    # client given back from now on (a lock taken before a configure and
    # released after it gives its client back to the pool it came from).
    # @return [void]
    def close
      clients = @mutex.synchronize do
        @closed = true # a client given back later (a lock held across configure) is closed then
        take_all
      end
      clients.each { |c| c.close unless c.closed? }
    end

    private

    def forget_parent_clients
      return if @pid == MegaMutex.pid

      @idle = [] # their handles free themselves without touching the sockets
      @pid = MegaMutex.pid
    end

    def take_all
      forget_parent_clients
      clients = @idle
      @idle = []
      clients
    end

    def open_client
      # Seldom (a new connection): the place to notice a fork that neither
      # Process._fork nor Process.daemon made (one from C), so that no
      # connection is ever used by a process that takes itself for its parent.
      MegaMutex.forked! if MegaMutex.pid != Process.pid
      client = @config.new_client
      client.instance_variable_set(:@mega_mutex_pid, MegaMutex.pid)
      client
    rescue SystemCallError => e
      # Nothing was sent: no lock can have been taken.
      raise ConnectionError, "cannot open a connection to #{@config.backend}: #{e.message} (#{e.class.name})#{EXHAUSTED[e.class]}"
    end

    # What a resource error from making a client means, for its message.
    EXHAUSTED = {
      Errno::EMFILE => ": this process has run out of file descriptors (see ulimit -n)",
      Errno::ENFILE => ": the system has run out of file descriptors",
      Errno::ENOMEM => ": out of memory"
    }.freeze
    private_constant :EXHAUSTED
  end
end

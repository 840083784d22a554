# frozen_string_literal: true

module MegaMutex
  # Connections for one configuration, shared by the threads of one process.
  #
  # A libmemcached handle serves one thread at a time, so each operation
  # checks a client out and back in. At most {MAX_IDLE} idle clients are
  # kept; one given back beyond that is closed at once (its socket and
  # eventfd), not left for the GC. After fork the child drops the parent's
  # clients without closing them (closing would shut down sockets the parent
  # still uses) and opens its own; a parent's client given back in the
  # child is neither kept nor closed.
  #
  # A client that cannot be made because the process is out of file
  # descriptors or memory raises {ConnectionError} naming the cause.
  #
  # With `config.backend = :memory` it hands out a {MemoryStore} instead (one
  # per pool, thread-safe; autoloaded on first use), and opens no connection.
  # @api private
  class Pool
    # Idle clients kept per process.
    MAX_IDLE = 64

    # @param config [Configuration] a frozen configuration
    def initialize(config)
      @config = config
      @mutex = Mutex.new
      @idle = []
      @pid = Process.pid
      @memory = config.backend == :memory
      @store = nil
    end

    # Yields a client for the duration of the block.
    # @yieldparam client [Native::Client, MemoryStore]
    # @return the block's value
    def with
      return yield(memory_store) if @memory

      client = checkout
      begin
        yield client
      ensure
        checkin(client)
      end
    end

    # Closes the idle connections (those of this process only).
    # @return [void]
    def close
      clients = @mutex.synchronize { take_all }
      clients.each { |c| c.close unless c.closed? }
    end

    private

    # The memory backend's store; a closed one is replaced, as a closed
    # pool opens new connections when used again.
    def memory_store
      store = @store
      return store if store && !store.closed?

      @mutex.synchronize do
        @store = MemoryStore.new if @store.nil? || @store.closed?
        @store
      end
    end

    def checkout
      client = @mutex.synchronize do
        forget_parent_clients
        @idle.pop
      end
      client || open_client
    end

    def checkin(client)
      mine = client.instance_variable_get(:@mega_mutex_pid) == Process.pid
      kept = @mutex.synchronize do
        # After a fork @pid may still be the parent's: the idle list is then
        # the parent's too, and forgotten at the next checkout.
        mine && @pid == Process.pid && @idle.size < MAX_IDLE && !client.closed? && @idle.push(client)
      end
      # Closed outside the mutex: close says "quit" to the server. A parent's
      # client is left alone (its handle frees itself without I/O).
      client.close if !kept && mine && !client.closed?
    end

    def forget_parent_clients
      return if @pid == Process.pid

      @idle = [] # their handles free themselves without touching the sockets
      @pid = Process.pid
    end

    def take_all
      forget_parent_clients
      clients = @idle
      @idle = []
      clients << @store if @store
      @store = nil
      clients
    end

    def open_client
      client = Native::Client.new(
        @config.server_addresses,
        (@config.connect_timeout * 1000).ceil,
        (@config.io_timeout * 1000).ceil,
        1
      )
      client.instance_variable_set(:@mega_mutex_pid, Process.pid)
      client
    rescue SystemCallError => e
      # Nothing was sent: no lock can have been taken.
      raise ConnectionError, "cannot open a connection to memcached: #{e.message} (#{e.class.name})#{EXHAUSTED[e.class]}"
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

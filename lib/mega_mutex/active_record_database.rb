# frozen_string_literal: true

module MegaMutex
  # ActiveRecord's MySQL database settings, read as the adapter reads them,
  # for the :mysql backend (MegaMutex::Railtie's backend :mysql without a
  # URL, and MySQLMutex's `connection` argument): which server an
  # application's database.yml entry, db_config or connection reaches, as
  # the settings {Configuration#mysql_settings=} takes. MegaMutex then opens
  # sessions of its own there; it never uses the application's connections.
  #
  # The adapters do not read host and socket alike, and MegaMutex's own rule
  # (a socket wins over a host) is trilogy's, not mysql2's:
  #
  # - trilogy: a socket wins (ActiveRecord drops the host); a host, even
  #   "localhost", is TCP ("localhost" becomes 127.0.0.1 here, as
  #   libmariadb would take the default socket for it); neither is the
  #   socket /tmp/mysql.sock.
  # - mysql2 (and mysql): a host other than "localhost" is TCP and the
  #   socket is ignored; "localhost" or no host is the socket (or the
  #   client library's default socket).
  #
  # A `url` (DATABASE_URL style) is resolved by ActiveRecord when it is
  # loaded (its parts win over the other keys, as in ActiveRecord).
  # @api private
  module ActiveRecordDatabase
    # Adapters whose settings backend :mysql can use.
    ADAPTERS = %w[mysql2 trilogy mysql].freeze
    # Where trilogy connects without a host or a socket.
    TRILOGY_DEFAULT_SOCKET = "/tmp/mysql.sock"

    module_function

    # @param hash [Hash] a database.yml entry or a db_config's configuration_hash
    #   (String or Symbol keys)
    # @param adapter_required [Boolean] nil for a hash that names no adapter
    #   (else it is read as mysql2 reads it)
    # @return [Hash{Symbol => Object}, nil] host, port, socket, username,
    #   password, database, where the adapter would connect; nil when the
    #   adapter is not MySQL
    # @raise [ArgumentError] for a value that is not a Hash or a bad url
    def settings(hash, adapter_required: false)
      raise ArgumentError, "database settings must be a Hash (got #{hash.class})" unless hash.is_a?(Hash)

      h = resolve_url(hash.transform_keys(&:to_sym))
      adapter = h[:adapter]&.to_s
      return nil if adapter.nil? && adapter_required
      return nil unless adapter.nil? || ADAPTERS.include?(adapter)

      out = h.slice(:host, :port, :socket, :username, :password, :database)
      out[:username] ||= h[:user] if h.key?(:user)
      blank = ->(v) { v.nil? || v.to_s.empty? }
      if adapter == "trilogy"
        if !blank.call(out[:socket])
          out.delete(:host)
        elsif blank.call(out[:host])
          out[:socket] = TRILOGY_DEFAULT_SOCKET
        elsif out[:host].to_s == "localhost"
          out[:host] = "127.0.0.1"
        end
      elsif !blank.call(out[:host]) && out[:host].to_s != "localhost"
        out.delete(:socket)
      end
      out
    end

    # @param connection [Object] an ActiveRecord connection (adapter)
    # @return [Hash, nil] its settings (see {.settings}), nil if it has none
    def of_connection(connection)
      hash =
        if connection.respond_to?(:pool) && connection.pool.respond_to?(:db_config)
          writing_of(connection.pool).configuration_hash
        elsif connection.instance_variable_defined?(:@config)
          connection.instance_variable_get(:@config) # before Rails 6.1
        end
      hash.is_a?(Hash) ? settings_with_adapter(hash, connection) : nil
    end

    # ActiveRecord::Base's database settings, when it is configured: its
    # writing role's database, whatever role is current. In the reading role
    # (Rails' database_selector puts GET requests there) the current database
    # is a replica, and a key locked there in one request and on the primary
    # in another would be held on two servers at once.
    # @return [Hash, nil] see {.settings}
    # @raise [ArgumentError] when the only database known is a replica
    def of_base
      return nil unless defined?(::ActiveRecord::Base) && ::ActiveRecord::Base.respond_to?(:connection_db_config)

      db_config = writing_db_config || ::ActiveRecord::Base.connection_db_config
      if db_config.respond_to?(:replica?) && db_config.replica?
        raise ArgumentError, "MySQLMutex: ActiveRecord::Base's database is a replica (#{db_config.name}) and no " \
                             "writing role is connected; named locks must live on the primary: pass a connection"
      end
      db_config.respond_to?(:configuration_hash) ? settings(db_config.configuration_hash) : nil
    rescue StandardError => e
      # Not configured (ActiveRecord::ConnectionNotEstablished and the like).
      raise unless defined?(::ActiveRecord::ActiveRecordError) && e.is_a?(::ActiveRecord::ActiveRecordError)

      nil
    end

    # A connection pool's db_config, or its writing role's when the pool is
    # of another role (a replica, in connected_to(role: :reading)): the same
    # key must be locked on one server whatever role the caller runs in.
    # @return [Object] a db_config
    # @raise [ArgumentError] for a pool of another role whose writing role is not connected
    def writing_of(pool)
      role = ::ActiveRecord.respond_to?(:writing_role) ? ::ActiveRecord.writing_role : nil
      return pool.db_config if role.nil? || !pool.respond_to?(:role) || pool.role == role

      owner = pool.respond_to?(:connection_class) ? pool.connection_class : pool.try(:connection_klass)
      shard = pool.respond_to?(:shard) ? pool.shard : nil
      writing = owner && shard &&
                owner.connection_handler.retrieve_connection_pool(owner.connection_specification_name, role: role, shard: shard)
      return writing.db_config if writing.respond_to?(:db_config)

      raise ArgumentError, "MySQLMutex: the connection is of the #{pool.role} role (#{pool.db_config.name}) and its " \
                           "#{role} role is not connected; named locks must live on the primary: pass its connection"
    end

    # @return [Object, nil] the db_config of ActiveRecord::Base's writing role
    #   (current shard), nil when it has none or ActiveRecord cannot say
    def writing_db_config
      base = ::ActiveRecord::Base
      role = ::ActiveRecord.respond_to?(:writing_role) ? ::ActiveRecord.writing_role : base.try(:writing_role)
      return nil if role.nil? || !base.respond_to?(:connection_handler) || !base.respond_to?(:connection_specification_name)

      shard = base.respond_to?(:current_shard) ? base.current_shard : nil
      pool = if shard
               base.connection_handler.retrieve_connection_pool(base.connection_specification_name, role: role, shard: shard)
             else
               base.connection_handler.retrieve_connection_pool(base.connection_specification_name, role: role)
             end
      pool.respond_to?(:db_config) ? pool.db_config : nil
    end

    # The primary database of environment `env` in database.yml's contents,
    # as ActiveRecord resolves it when it is loaded (a url, DATABASE_URL).
    # @param all [Hash, nil] database.yml as Rails reads it
    # @param env [String]
    # @return [Hash, nil] the entry (with its adapter), nil if none
    def primary_entry(all, env)
      return nil unless all.is_a?(Hash)

      if (resolver = configurations_class)
        configs = resolver.new(all)
        db_config = configs.configs_for(env_name: env, name: "primary") || configs.configs_for(env_name: env).first
        return db_config&.configuration_hash&.transform_keys(&:to_s)
      end

      entry = all[env]
      # A multi-database environment nests them by name: the primary one.
      if entry.is_a?(Hash) && !entry.key?("adapter") && !entry.key?("url")
        entry = entry["primary"] || entry.values.find { |v| v.is_a?(Hash) && (v.key?("adapter") || v.key?("url")) }
      end
      entry.is_a?(Hash) ? entry : nil
    end

    # `hash` read by {.settings}, with the connection's adapter when it names none.
    # @return [Hash, nil]
    def settings_with_adapter(hash, connection)
      h = hash.transform_keys(&:to_sym)
      # The adapter's own name when the hash does not say (an adapter class
      # such as ActiveRecord::ConnectionAdapters::TrilogyAdapter).
      if h[:adapter].nil? && connection.respond_to?(:adapter_name)
        h[:adapter] = { "Trilogy" => "trilogy", "Mysql2" => "mysql2" }.fetch(connection.adapter_name.to_s, nil)
      end
      settings(h)
    end

    # @return [Hash{Symbol => Object}] `h` with its :url's parts merged in (they win)
    def resolve_url(h)
      url = h[:url]
      return h if url.nil? || url.to_s.empty?

      rest = h.reject { |k, _| k == :url }
      if (resolver = configurations_class)
        parts = resolver::UrlConfig.new("mega_mutex", "primary", url.to_s, rest).configuration_hash
        return parts.transform_keys(&:to_sym)
      end

      parsed = Configuration.parse_mysql_url(url.to_s).to_h.compact
      scheme = url.to_s[/\A([a-z0-9+.-]+):/i, 1]&.downcase
      adapter = { "trilogy" => "trilogy", "mysql2" => "mysql2", "mysql" => "mysql2", "mariadb" => "mysql2" }[scheme]
      rest.merge(parsed).tap { |m| m[:adapter] = adapter if adapter && !rest.key?(:adapter) }
    end

    # @return [Class, nil] ActiveRecord::DatabaseConfigurations, when ActiveRecord is loaded
    def configurations_class
      return nil unless defined?(::ActiveRecord::VERSION)

      require "active_record/database_configurations"
      ::ActiveRecord::DatabaseConfigurations
    rescue LoadError
      nil
    end

    private_class_method :settings_with_adapter, :resolve_url, :configurations_class, :writing_db_config, :writing_of
  end
end
